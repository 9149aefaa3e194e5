// Stream fork: every input record goes to all N outputs (a tensor that several layers read, e.g. a
// residual block's input, read by its first layer and by the shortcut).
//
// One record register shared by the outputs, and a pending bit per output: output i holds the
// record until it takes it, independently of the others; the next record enters once every output
// has taken (or is taking) the current one. Full throughput (one record per cycle) while all
// outputs are ready; the slowest output back-pressures the input, so the outputs' FIFOs must
// absorb the difference between the branches (the backend sizes them from the schedule).
`default_nettype none
module bnnc_fork #(
    parameter int WIDTH = 8,
    parameter int N = 2
) (
    input  logic             clk,
    input  logic             rst_n,
    input  logic             in_valid,
    output logic             in_ready,
    input  logic [WIDTH-1:0] in_data,
    output logic [    N-1:0] out_valid,
    input  logic [    N-1:0] out_ready,
    output logic [WIDTH-1:0] out_data
);
  if (N < 1) begin : g_check_n
    $error("bnnc_fork: N=%0d outputs must be at least 1", N);
  end

  logic [N-1:0] pending;
  wire [N-1:0] left = pending & ~out_ready;  // outputs still holding the record after this cycle

  assign out_valid = pending;
  assign in_ready = left == '0;

  always_ff @(posedge clk) begin
    if (!rst_n) pending <= '0;
    else if (in_valid && in_ready) pending <= '1;
    else pending <= left;
  end

  always_ff @(posedge clk) begin
    if (in_valid && in_ready) out_data <= in_data;
  end
endmodule
`default_nettype wire
