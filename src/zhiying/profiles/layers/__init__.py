"""User layers: lifecycle, value x frequency, promotion sensitivity; distribution, migration."""
