"""The separation engine: plans segments, shifts and bag weights, and runs a model over a signal.

`plan` decides (segment grid, random shifts, which bag members run and with what weight);
`separator` runs the plan (batching, devices, precision, overlap-add, progress). Neither reads
nor writes files: `stemsplit.pipeline` feeds them decoded audio and writes what they yield.
"""
