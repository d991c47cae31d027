"""Ingestion: outside input (Segment HTTP calls, bulk files, the demo) → stored events.

``models`` validates Segment messages into warehouse rows (pure), ``pipeline``
stores them (``store_events``: dedup, ONE_ID, traits, warehouse), ``writer``
groups concurrent requests into one store call, ``api`` speaks Segment's HTTP
tracking API, ``bulk``/``mapping`` read files. See docs/ingestion.md.
"""
