"""Crash recovery: the agents are stateless, so a process killed with jobs in flight
loses nothing. Propeller keeps the resource metas; a new process finishes every job from
them, and Propeller re-sending a CreateTask it got no answer to starts no second job."""

from __future__ import annotations

import time

from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, Emulator, workspace_binary
from test_bigquery import TASK_TYPE, bigquery_task, emulator_jobs, literal_map, metadata, serialize

SUCCEEDED = 3


def test_kill_9_with_jobs_in_flight_then_a_new_process_finishes_them_all():
    from flytekit import StructuredDataset, kwtypes

    emulator = Emulator("bigquery", "--pending-ms", "300", "--running-ms", "1500")
    task = bigquery_task(name="bq.crash", inputs=kwtypes(n=int), query_template="SELECT @n",
                         output_structured_dataset_type=StructuredDataset)
    template = serialize(task)
    creates = [agent_pb2.CreateTaskRequest(template=template, inputs=literal_map(task, {"n": i}),
                                           output_prefix=f"gs://bucket/out/{i}", task_execution_metadata=metadata(f"crash-{i}"))
               for i in range(8)]
    category = agent_pb2.TaskCategory(name=TASK_TYPE, version=0)
    env = {"BIGQUERY_EMULATOR_HOST": emulator.host}
    first = Agent(workspace_binary("agent-bigquery"), env=env)
    try:
        stub = agent_pb2_grpc.AsyncAgentServiceStub(first.channel)
        metas = [stub.CreateTask(c, timeout=10).resource_meta for c in creates]
        phases = {stub.GetTask(agent_pb2.GetTaskRequest(resource_meta=m, task_category=category), timeout=10).resource.phase
                  for m in metas}
        assert SUCCEEDED not in phases, "the jobs must still be in flight when the agent dies"
        first.kill()
        assert first.proc.returncode == -9

        second = Agent(workspace_binary("agent-bigquery"), env=env)
        try:
            stub = agent_pb2_grpc.AsyncAgentServiceStub(second.channel)
            # Propeller never saw an answer to the last create: it sends it again.
            assert stub.CreateTask(creates[-1], timeout=10).resource_meta == metas[-1]
            pending = dict(enumerate(metas))
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                for i, meta in list(pending.items()):
                    r = stub.GetTask(agent_pb2.GetTaskRequest(resource_meta=meta, task_category=category,
                                                              output_prefix=creates[i].output_prefix), timeout=10).resource
                    assert r.phase in (1, 2, 7, SUCCEEDED), r.message
                    if r.phase == SUCCEEDED:
                        assert r.outputs.literals["results"].scalar.structured_dataset.uri.startswith("bq://")
                        del pending[i]
                time.sleep(0.1)
            assert not pending, f"jobs never finished after the restart: {sorted(pending)}"
        finally:
            assert second.stop() == 0, second.logs()
        state = emulator_jobs(emulator)
        # Nine inserts (the repeated create included), eight jobs: the job id is the attempt's.
        assert state["insert_requests"] == len(creates) + 1
        assert len(state["jobs"]) == len(creates), f"{len(state['jobs'])} BigQuery jobs for {len(creates)} tasks"
    finally:
        first.kill()
        emulator.stop()
