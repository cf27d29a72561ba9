"""Consensus behind one interface (`swarm.consensus.base.Consensus`), two backends: `embedded`
(pysyncobj in the site process) and `etcd` (an existing etcd cluster)."""
