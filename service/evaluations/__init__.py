"""Evaluations: does training on a selection help (LESS tab. 2)?"""
