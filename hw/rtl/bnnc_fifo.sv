// Synchronous FIFO between dataflow stages (valid/ready on both sides).
//
// DEPTH entries of WIDTH bits; in_ready and out_valid depend only on registers, so a FIFO cuts
// every combinational valid/ready path between the stages it joins.
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

  wire push = in_valid && in_ready;
  wire pop = out_valid && out_ready;

  assign in_ready = count != CW'(DEPTH);
  assign out_valid = count != '0;
  assign out_data = mem[rptr];

  function automatic logic [AW-1:0] next_ptr(input logic [AW-1:0] p);
    next_ptr = p == AW'(DEPTH - 1) ? '0 : p + 1'b1;
  endfunction

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      rptr  <= '0;
      wptr  <= '0;
      count <= '0;
    end else begin
      if (push) wptr <= next_ptr(wptr);
      if (pop) rptr <= next_ptr(rptr);
      if (push && !pop) count <= count + 1'b1;
      else if (pop && !push) count <= count - 1'b1;
    end
  end

  always_ff @(posedge clk) begin
    if (push) mem[wptr] <= in_data;
  end
endmodule
`default_nettype wire
