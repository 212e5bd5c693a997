"""Starting FLARE: the simulator, POC and provisioned runs, the lab federation, their checks and commands."""
