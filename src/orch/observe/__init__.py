"""Observation: typed run events, the event-log follower, and the one read model (snapshot).

Read-only: nothing here writes to the project or takes a partition lock.
"""
