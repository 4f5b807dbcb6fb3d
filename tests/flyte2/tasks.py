"""Tasks written the way Flyte 2 users write them, with flyte-sdk 2.12.1 and its Databricks,
Snowflake and BigQuery plugins, and `serialize`, which turns a task and native input values
into what a Flyte 2 backend sends a connector: a `flyteidl2` TaskTemplate and
`flyteidl2.task.Inputs`, made by flyte-sdk's own serializer.

This must stay an importable module (not code run with `exec`): flyte-sdk hashes a task
function's source and names its module in the container's resolver arguments."""

from __future__ import annotations

import asyncio
import datetime
import os
import pathlib

import flyte
from flyte._internal.runtime.convert import convert_from_native_to_inputs
from flyte._internal.runtime.task_serde import get_proto_task
from flyte.io import DataFrame
from flyte.models import SerializationContext
from flyteplugins.bigquery import BigQueryConfig, BigQueryTask
from flyteplugins.databricks import Databricks
from flyteplugins.snowflake import Snowflake, SnowflakeConfig

HERE = pathlib.Path(__file__).resolve().parent

# --- Databricks ---------------------------------------------------------------------------

# The workspace is the emulator, whose port is known only at run time: tests set it with
# `set_databricks_instance` (the plugin reads the config when the task is serialized).
DATABRICKS = Databricks(
    spark_conf={"spark.executor.memory": "4g", "spark.sql.shuffle.partitions": "8"},
    databricks_conf={
        "run_name": "flyte2 oracle",
        "new_cluster": {"spark_version": "13.3.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 2,
                        "spark_env_vars": {"TEAM": "data"}},
        "timeout_seconds": 3600,
        "max_retries": 1,
    },
    databricks_instance=os.environ.get("FLYTE_DATABRICKS_INSTANCE"),
    databricks_token="databricks_token",
)

databricks_env = flyte.TaskEnvironment(
    name="oracle_databricks",
    plugin_config=DATABRICKS,
    image="ghcr.io/example/pyspark:oracle",
    env_vars={"FOO": "bar", "TEAM": "platform"},
)


@databricks_env.task
def databricks_plain() -> None:
    print("hello from Databricks")


@databricks_env.task
def databricks_with_inputs(path: str, n: int = 3) -> int:
    return len(path) * n


def set_databricks_instance(instance: str) -> None:
    DATABRICKS.databricks_instance = instance


# --- Snowflake ----------------------------------------------------------------------------

SNOWFLAKE_ACCOUNT = "xy12345-us-east-1"
SNOWFLAKE_USER = "flyte_tenant"


def _snowflake_config(**kwargs) -> SnowflakeConfig:
    return SnowflakeConfig(account=SNOWFLAKE_ACCOUNT, user=SNOWFLAKE_USER, database="ANALYTICS", schema="SALES",
                           warehouse="COMPUTE_WH", **kwargs)


snowflake_plain = Snowflake(
    name="snowflake_plain",
    query_template="""
        SELECT id, name
        FROM customers
        WHERE active
    """,
    plugin_config=_snowflake_config(),
    output_dataframe_type=DataFrame,
)

snowflake_params = Snowflake(
    name="snowflake_params",
    query_template=(
        "SELECT * FROM events WHERE id = %(id)s AND name = %(name)s AND score > %(score)s "
        "AND active = %(active)s AND created_at >= %(since)s"
    ),
    plugin_config=_snowflake_config(),
    inputs={"id": int, "name": str, "score": float, "active": bool, "since": datetime.datetime},
    output_dataframe_type=DataFrame,
)

snowflake_batch = Snowflake(
    name="snowflake_batch",
    query_template="INSERT INTO people (id, name) values (%(id)s, %(name)s)",
    plugin_config=_snowflake_config(),
    inputs={"id": list[int], "name": list[str]},
    batch=True,
)

snowflake_secrets = Snowflake(
    name="snowflake_secrets",
    query_template="SELECT CURRENT_USER()",
    plugin_config=_snowflake_config(),
    secret_group="tenant",
    snowflake_private_key="private-key",
)

snowflake_passphrase = Snowflake(
    name="snowflake_passphrase",
    query_template="SELECT CURRENT_ROLE()",
    plugin_config=_snowflake_config(),
    secret_group="tenant",
    snowflake_private_key="private-key",
    snowflake_private_key_passphrase="pk-pass",
)

snowflake_role = Snowflake(
    name="snowflake_role",
    query_template="SELECT COUNT(*) FROM orders WHERE region = %(region)s",
    plugin_config=_snowflake_config(connection_kwargs={"role": "ANALYST"}),
    inputs={"region": str},
)

for _task in (snowflake_plain, snowflake_params, snowflake_batch, snowflake_secrets, snowflake_passphrase,
              snowflake_role):
    flyte.TaskEnvironment.from_task(f"env_{_task.name}", _task)

# --- BigQuery -----------------------------------------------------------------------------

BIGQUERY_PROJECT = "oracle-project"

bigquery_plain = BigQueryTask(
    name="bigquery_plain",
    query_template="SELECT 1 AS one",
    plugin_config=BigQueryConfig(ProjectID=BIGQUERY_PROJECT, Location="US"),
    output_dataframe_type=DataFrame,
)

bigquery_params = BigQueryTask(
    name="bigquery_params",
    query_template=(
        "SELECT * FROM `ds.events` WHERE n = @n AND s = @s AND f > @f AND b = @b AND d < @d"
    ),
    plugin_config=BigQueryConfig(ProjectID=BIGQUERY_PROJECT, Location="EU"),
    inputs={"n": int, "s": str, "f": float, "b": bool, "d": datetime.datetime},
    output_dataframe_type=DataFrame,
)

bigquery_secrets = BigQueryTask(
    name="bigquery_secrets",
    query_template="SELECT SESSION_USER()",
    plugin_config=BigQueryConfig(ProjectID=BIGQUERY_PROJECT),
    google_application_credentials="tenant-gcp-sa",
)

for _task in (bigquery_plain, bigquery_params, bigquery_secrets):
    flyte.TaskEnvironment.from_task(f"env_{_task.name}", _task)

# --- serialization ------------------------------------------------------------------------


def serialization_context() -> SerializationContext:
    return SerializationContext(version="v1", project="oracle", domain="development", org="o", root_dir=HERE)


def serialize(task, **values):
    """`(flyteidl2.core.TaskTemplate, flyteidl2.task.Inputs)` for `task` called with `values`,
    both made by flyte-sdk as a Flyte 2 backend receives them."""
    template = get_proto_task(task, serialization_context())
    inputs = asyncio.run(convert_from_native_to_inputs(task.native_interface, **values))
    return template, inputs.proto_inputs
