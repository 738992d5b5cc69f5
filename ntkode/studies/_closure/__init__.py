"""`ntkode closure`: can a U-Net learn planar topology, and is it its own kernel machine?"""
