"""looplab's Kedro pipelines, one folder per layer of the loop."""
