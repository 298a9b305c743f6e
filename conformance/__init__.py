"""Conformance: scenarios (objects + requests + expected answers), their runner and the echo pod."""
