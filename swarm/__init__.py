"""The swarm: sites that agree through consensus on the control plane (membership, placement,
cloud-fallback mode) and spread requests between them through a gossiped load table."""
