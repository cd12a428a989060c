"""Float network -> integer network in a hardware profile's formats."""
