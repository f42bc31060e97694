"""Batch jobs over the pool: the OpenAI Files and Batch API, durable in the gateway's database.

`routes` (HTTP), `store` (tables and queries), `validate` (input files), `policy`
(pure shard and provider choices), `runner` (claims and runs shards), `cli`.
"""
