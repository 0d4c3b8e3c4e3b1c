"""``uc2otactl``: the command line of uc2otad, a client of the public D-Bus API and nothing else."""
