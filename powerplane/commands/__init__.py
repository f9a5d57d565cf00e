"""The commands of the powerplane CLI that run the plane: controller, agent, collect, twin."""
