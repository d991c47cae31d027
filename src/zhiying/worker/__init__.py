"""The worker: runs Zhiying's scheduled jobs (segment snapshots, tag refreshes, coupon sweeps).

``zhiying serve`` runs it in a background thread next to the API, because an
embedded DuckDB warehouse has one writer process; with a ClickHouse warehouse
``zhiying worker`` can run it as its own process. Several workers on one
PostgreSQL database are safe: each job runs only under a lease row
(``zhiying.worker.leases``).
"""
