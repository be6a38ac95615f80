"""Mixture of experts: routers, dispatch (capacity / dropless), stacked experts, SMEAR, expert parallelism."""
