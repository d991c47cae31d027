"""Tags: static, semi-static and dynamic tag definitions, computed in the warehouse."""
