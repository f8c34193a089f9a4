"""The fault soak's support: a RabbitMQ cluster of private nodes, a fault-injecting TCP proxy,
traffic in a namespace, the fault schedule and the stall monitor (tests/test_soak.py runs them)."""
