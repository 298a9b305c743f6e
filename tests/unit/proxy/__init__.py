"""Unit tests of the data plane (proxy/)."""
