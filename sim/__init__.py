"""The placement simulator (`mec sim`): a discrete-event simulation of a swarm of MEC sites.

It drives the project's own fast-path router (`agent.router.plan`), the swarm's balancer
(`swarm.balancer.choose_peer`) over real load tables (`swarm.load_table.LoadTable`), the real
admission gates (`agent.admission.InstanceGate`), cloud targets (`swarm.cloud.CloudCompute`) and
overload states (`monitoring.overload.OverloadMachine`), each with a simulated clock, to compare balancing policies on a described topology and workload.
"""
