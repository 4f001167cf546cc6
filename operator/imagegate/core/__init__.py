"""The vocabulary every layer speaks, pure: image references, the images of a workload, public
keys.
"""
