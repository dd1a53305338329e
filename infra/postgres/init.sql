-- One Postgres for both systems: the Dagster instance (database from POSTGRES_DB) and MLflow's backend.
CREATE DATABASE mlflow;
