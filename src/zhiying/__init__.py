"""Zhiying (智营): closed-loop marketing operations."""
