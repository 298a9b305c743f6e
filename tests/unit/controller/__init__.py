"""Unit tests of the controller (controller/)."""
