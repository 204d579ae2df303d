"""Gradient-based architecture search (DARTS, PC-DARTS, DrNAS): steps, architects, the search."""
