// Synchronous FIFO between dataflow stages (valid/ready on both sides).
//
// DEPTH entries of WIDTH bits; in_ready and out_valid are registers (full and empty, kept with
// the count), so a FIFO cuts every combinational valid/ready path between the stages it joins and
// its neighbours' handshakes start at a flip-flop, not at a compare of the count.
`default_nettype none
module bnnc_fifo #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 2
) (
    input  logic             clk,
    input  logic             rst_n,
    input  logic             in_valid,
    output logic             in_ready,
    input  logic [WIDTH-1:0] in_data,
    output logic             out_valid,
    input  logic             out_ready,
    output logic [WIDTH-1:0] out_data
);
  localparam int AW = DEPTH > 1 ? $clog2(DEPTH) : 1;
  localparam int CW = $clog2(DEPTH + 1);

  logic [WIDTH-1:0] mem[DEPTH];
  logic [AW-1:0] rptr, wptr;
  logic [CW-1:0] count;
  logic full, empty;  // count == DEPTH, count == 0

  wire push = in_valid && in_ready;
  wire pop = out_valid && out_ready;

  assign in_ready = !full;
  assign out_valid = !empty;
  assign out_data = mem[rptr];

  function automatic logic [AW-1:0] next_ptr(input logic [AW-1:0] p);
    next_ptr = p == AW'(DEPTH - 1) ? '0 : p + 1'b1;
  endfunction

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      rptr  <= '0;
      wptr  <= '0;
      count <= '0;
      full  <= 1'b0;
      empty <= 1'b1;
    end else begin
      if (push) wptr <= next_ptr(wptr);
      if (pop) rptr <= next_ptr(rptr);
      // the flags from compares of the current count, in parallel with the handshake
      if (push && !pop) begin
        count <= count + 1'b1;
        full  <= count == CW'(DEPTH - 1);
        empty <= 1'b0;
      end else if (pop && !push) begin
        count <= count - 1'b1;
        full  <= 1'b0;
        empty <= count == CW'(1);
      end
    end
  end

  always_ff @(posedge clk) begin
    if (push) mem[wptr] <= in_data;
  end
endmodule
`default_nettype wire
