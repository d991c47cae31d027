"""The simulated business behind ``zhiying demo``.

``population`` draws the fixed world (cities, catalogue, customers with a
hidden coupon sensitivity), ``simulate`` turns it into Segment messages in
time order (pure, deterministic for a seed), ``batches`` validates them with
the ingestion code, and ``run`` (``run_demo``) stores them with
``store_events`` and reads the summary back from the warehouse.

Nothing is re-exported here, so importing the pure modules stays light.
"""
