"""The model and how to run it: loading (``loading``), named sites and layer selections
(``sites``, ``layers``), prompt -> token ids (``encode``), and the one hook layer every stage
uses to read or change a block's output (``hooks``). Imports only ``store`` and itself."""
