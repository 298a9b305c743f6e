"""Unit tests of the API edge (controller/kube/)."""
