"""Files the API serves to browsers: the drop-in inbox component and its demo page."""
