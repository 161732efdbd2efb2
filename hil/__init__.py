"""Hardware-in-the-loop rigs: the same scenarios on a real bench and on a virtual board."""
