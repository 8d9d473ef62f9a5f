"""Contracts shared by every process: pydantic models, enums, constants and SQL DDL. No I/O."""
