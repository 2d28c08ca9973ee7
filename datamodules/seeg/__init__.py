"""sEEG data: the DataModule, prepare (BIDS-iEEG -> epochs) and the synthetic word-reading world."""
