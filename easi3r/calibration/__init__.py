"""``easi3r calibrate``: measure, on labelled frames, which decoder-attention statistics separate moving
objects, and search a mask formula that does (project issue 14)."""
