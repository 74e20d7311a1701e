"""The CroCo-family two-view network (DUSt3R, MonST3R): layers, heads, checkpoints, adapters."""
