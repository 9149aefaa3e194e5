// Read-only memory with a registered output, initialised from a $readmemh file (one hexadecimal
// word of W bits per line). The read is enabled by `en`, so the output holds during a stall.
// Shaped so that synthesis maps it to block RAM or LUT RAM.
`default_nettype none
module bnnc_rom #(
    parameter int W = 8,
    parameter int D = 2,
    parameter FILE = "",
    localparam int AW = D > 1 ? $clog2(D) : 1
) (
    input  logic          clk,
    input  logic          en,
    input  logic [AW-1:0] addr,
    output logic [ W-1:0] q
);
  /* verilator lint_off UNDRIVEN */  // only $readmemh writes it, and only with a FILE
  logic [W-1:0] mem[D];
  /* verilator lint_on UNDRIVEN */

  // without a file (a default-parameter elaboration, e.g. yosys read_verilog without -defer) the
  // memory is left uninitialised rather than failing on an empty path
  if (FILE != "") begin : g_image
    initial $readmemh(FILE, mem);
  end

  always_ff @(posedge clk) begin
    if (en) q <= mem[addr];
  end
endmodule
`default_nettype wire
