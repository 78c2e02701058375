"""Where images come from: each dataset's download and check (download.py) and the demo drawn offline (demo.py).
Reading a domain's images is data_loader.py's, at the top."""
