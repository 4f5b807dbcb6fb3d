"""Writes the Flyte 2 samples next to this file: one task per agent, defined and serialized
with flyte-sdk 2.12.1 and its plugins (tests/flyte2/requirements.txt), as a Flyte 2 backend
receives them. Run with the flyte2 venv: target/flyte2-venv/bin/python serialize.py"""

import datetime
import json
import pathlib

import flyte
from flyte._internal.runtime.task_serde import get_proto_task
from flyte.io import DataFrame
from flyte.models import SerializationContext
from flyteplugins.bigquery import BigQueryConfig, BigQueryTask
from flyteplugins.databricks import Databricks
from flyteplugins.snowflake import Snowflake, SnowflakeConfig
from google.protobuf.json_format import MessageToDict

HERE = pathlib.Path(__file__).resolve().parent

# The instance comes from the agent's FLYTE_DATABRICKS_INSTANCE; the token from the request.
databricks_env = flyte.TaskEnvironment(
    name="databricks_demo",
    image="ghcr.io/flyteorg/flyte:py3.12-v2.12.1",
    plugin_config=Databricks(
        spark_conf={"spark.executor.memory": "4g"},
        databricks_conf={"run_name": "flyte2 demo", "timeout_seconds": 3600,
                         "new_cluster": {"spark_version": "13.3.x-scala2.12", "node_type_id": "i3.xlarge",
                                         "num_workers": 2}},
        databricks_token="databricks-token",
    ),
)


@databricks_env.task
def count_rows(n: int = 3) -> int:
    return n


snowflake = Snowflake(
    name="snowflake_demo",
    query_template="INSERT INTO orders (id, region) VALUES (%(id)s, %(region)s)",
    plugin_config=SnowflakeConfig(account="xy12345-us-east-1", user="FLYTE", database="DEMO", schema="PUBLIC",
                                  warehouse="COMPUTE_WH", connection_kwargs={"role": "ANALYST"}),
    inputs={"id": list[int], "region": list[str]},
    snowflake_private_key="snowflake-private-key",
    batch=True,
)
flyte.TaskEnvironment.from_task("snowflake_demo", snowflake)

bigquery = BigQueryTask(
    name="bigquery_demo",
    query_template="SELECT @region AS region, @since AS since",
    plugin_config=BigQueryConfig(ProjectID="flyte-demo", Location="US"),
    inputs={"region": str, "since": datetime.datetime},
    output_dataframe_type=DataFrame,
)
flyte.TaskEnvironment.from_task("bigquery_demo", bigquery)


def literal(value):
    """A flyteidl LiteralMap entry in protobuf JSON."""
    if isinstance(value, list):
        return {"collection": {"literals": [literal(v) for v in value]}}
    if isinstance(value, datetime.datetime):
        return {"scalar": {"primitive": {"datetime": value.strftime("%Y-%m-%dT%H:%M:%SZ")}}}
    key = "integer" if isinstance(value, int) else "stringValue"
    return {"scalar": {"primitive": {key: str(value) if key == "integer" else value}}}


if __name__ == "__main__":
    context = SerializationContext(version="v1", project="flytesnacks", domain="development", org="demo",
                                   root_dir=HERE)
    samples = {
        "databricks": (count_rows, {"n": 3}),
        "snowflake": (snowflake, {"id": [1, 2], "region": ["EUROPE", "ASIA"]}),
        "bigquery": (bigquery, {"region": "EUROPE", "since": datetime.datetime(2024, 1, 2, 3, 4, 5)}),
    }
    for name, (task, inputs) in samples.items():
        template = MessageToDict(get_proto_task(task, context))
        (HERE / f"{name}.template.json").write_text(json.dumps(template, indent=2) + "\n")
        literals = {"literals": {k: literal(v) for k, v in inputs.items()}}
        (HERE / f"{name}.inputs.json").write_text(json.dumps(literals, indent=2) + "\n")
