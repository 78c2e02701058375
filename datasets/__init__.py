"""Where images come from: each dataset's download and check (download.py) and the demo drawn offline (demo.py).
Reading a domain's images is data_loader.py's, at the top; the file of the disk cache it reads them from
(disk_cache.py) is here, importing nothing of data_loader, which imports it."""
