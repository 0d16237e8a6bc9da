"""Tables, statistics and plots shared by the command line and the studies."""
