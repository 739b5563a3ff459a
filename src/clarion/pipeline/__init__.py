"""The stages: intake, relay, planner, channel workers, status, scheduler."""
