"""Test infrastructure shipped with the package: an in-process Grid and loopback deployments
(SuperLink and SuperNode processes on this machine)."""
