"""Checks of a device and of what a GPU would do: the self-test and the launch proxy."""
