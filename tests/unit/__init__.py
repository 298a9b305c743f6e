"""Unit tests, one package per product package: proxy/, controller/ (its compiler/, kube/)."""
