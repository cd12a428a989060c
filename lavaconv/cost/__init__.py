"""What a network costs: hardware profiles, operation counts, energy and resource estimates."""
