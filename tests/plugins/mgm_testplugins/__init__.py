"""Test plugins for mgmbus: they record every hook call and obey a control socket (see recorder.py)."""
