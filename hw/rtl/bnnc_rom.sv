// Read-only memory initialised from a $readmemh file (one hexadecimal word per line). The read is
// enabled by `en`, so the output holds during a stall. Shaped so that synthesis maps it to block
// RAM or LUT RAM.
//
// LATENCY == 1: q is registered, one cycle after addr; the file holds D words of W bits.
// LATENCY == 2: q is valid two cycles after addr, and comes from registers through at most a
// multiplexer, so the block RAM's clock-to-output (most of a cycle at speed) never meets logic:
//   D <= BANK_DEPTH: the address is registered before the read, q is the memory's output register;
//   D >  BANK_DEPTH: the memory is NB = ceil(D / BANK_DEPTH) banks side by side, BANK_DEPTH words
//     of NB*W bits (word a at bits (a / BANK_DEPTH)*W of line a % BANK_DEPTH, matrix_unit.banked_words),
//     so synthesis splits it by width only: a deeper memory is cascaded by depth with a multiplexer
//     on the block RAM outputs. The line read is registered once more and q selects the bank.
`default_nettype none
module bnnc_rom #(
    parameter int W = 8,
    parameter int D = 2,
    parameter FILE = "",
    parameter int LATENCY = 1,
    parameter int BANK_DEPTH = 512,
    localparam int AW = D > 1 ? $clog2(D) : 1
) (
    input  logic          clk,
    input  logic          en,
    input  logic [AW-1:0] addr,
    output logic [ W-1:0] q
);
  if (LATENCY != 1 && LATENCY != 2) begin : g_check_latency
    $error("bnnc_rom: LATENCY=%0d must be 1 or 2", LATENCY);
  end
  if (LATENCY == 2 && (BANK_DEPTH < 2 || (BANK_DEPTH & (BANK_DEPTH - 1)) != 0)) begin : g_check_bank
    $error("bnnc_rom: BANK_DEPTH=%0d must be a power of two of at least 2", BANK_DEPTH);
  end

  if (LATENCY == 2 && D > BANK_DEPTH) begin : g_banked
    localparam int NB = (D + BANK_DEPTH - 1) / BANK_DEPTH;
    localparam int LB = $clog2(BANK_DEPTH);  // address bits within a bank
    localparam int HB = AW - LB;  // bank select bits
    /* verilator lint_off UNDRIVEN */  // only $readmemh writes it, and only with a FILE
    logic [NB*W-1:0] mem[BANK_DEPTH];
    /* verilator lint_on UNDRIVEN */
    if (FILE != "") begin : g_image
      initial $readmemh(FILE, mem);
    end
    logic [NB*W-1:0] line, line_q;
    logic [HB-1:0] bank, bank_q;
    always_ff @(posedge clk) begin
      if (en) begin
        line <= mem[addr[LB-1:0]];
        bank <= addr[AW-1:LB];
        line_q <= line;
        bank_q <= bank;
      end
    end
    // a multiplexer tree on the bank select (an indexed part-select would multiply it by W)
    logic [W-1:0] words[2**HB];
    for (genvar b = 0; b < 2 ** HB; b++) begin : g_word
      if (b < NB) begin : g_bank
        assign words[b] = line_q[b*W+:W];
      end else begin : g_none
        assign words[b] = '0;
      end
    end
    assign q = words[bank_q];
  end else begin : g_flat
    /* verilator lint_off UNDRIVEN */  // only $readmemh writes it, and only with a FILE
    logic [W-1:0] mem[D];
    /* verilator lint_on UNDRIVEN */

    // without a file (a default-parameter elaboration, e.g. yosys read_verilog without -defer) the
    // memory is left uninitialised rather than failing on an empty path
    if (FILE != "") begin : g_image
      initial $readmemh(FILE, mem);
    end

    logic [AW-1:0] raddr;
    if (LATENCY == 2) begin : g_addr_reg
      always_ff @(posedge clk) begin
        if (en) raddr <= addr;
      end
    end else begin : g_addr
      assign raddr = addr;
    end
    always_ff @(posedge clk) begin
      if (en) q <= mem[raddr];
    end
  end
endmodule
`default_nettype wire
