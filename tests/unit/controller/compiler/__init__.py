"""Unit tests of the compiler (controller/compiler/)."""
