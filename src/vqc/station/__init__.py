"""Stations on the line: a camera, a model bundle, its trigger, its outputs and its records.

Read top to bottom: config (STATION.yaml) -> sources and aravis (frames) -> station (one part:
grab, score, record, signal) -> delivery (results in order to each output) -> opcua, mqtt,
webhook (the outputs) -> page (the operator's live view) -> line (all of it in one process).
"""
