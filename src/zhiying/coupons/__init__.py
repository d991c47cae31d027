"""Coupons: templates, pure pricing (``quote``), issuance, lock/redeem/release, budgets,
abuse limits and the ledger. The only package that changes a coupon's state."""
