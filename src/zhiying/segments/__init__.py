"""Segments: who an operator means — rule DSL, compiler to SQL, previews, snapshots."""
